"""Typed, validated parameters: the dataclasses of ``params.yaml`` (:mod:`~pipeline.config.schema`), reading
it and preset overlays (:mod:`~pipeline.config.loader`), cross-field validation (:mod:`~pipeline.config.validation`)
and the repository's paths (:mod:`~pipeline.config.paths`). The public names are re-exported here, so
``pipeline.config.load`` and ``from pipeline.config import Params`` are the way to use it."""
from pipeline.config.paths import (
    PACKAGE_DIR,
    PRETRAIN_WEIGHTS,
    PRETRAINED_BY_STAGE,
    REPO_ROOT,
    WEIGHTS_DIR,
    params_path,
    portable_uri,
    resolve_path,
    weights_path,
)
from pipeline.config.schema import (
    FPN_LEVELS,
    SYNTHETIC_MAX_IMAGES,
    SYNTHETIC_ROOT,
    SYNTHETIC_SPLITS,
    AblationParams,
    AblationTrainParams,
    AnchorParams,
    AugmentParams,
    BackboneParams,
    ConfigError,
    DataParams,
    EvalParams,
    FPNParams,
    HeadParams,
    InputParams,
    LossParams,
    MaskRCNNParams,
    MlflowParams,
    ModelParams,
    Params,
    PretrainParams,
    SyntheticParams,
    TrainParams,
    flatten,
    to_dict,
)
from pipeline.config.validation import IDENTIFIER, grid_cell_name, validate
from pipeline.config.loader import BASE_KEY, from_dict, load, merge, read_raw, replace  # noqa: E402  (after validation: it uses it)
