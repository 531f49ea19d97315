"""MLflow tracking and the stage runner: a stage run (:mod:`~pipeline.tracking.run`) against a tracking store
(:mod:`~pipeline.tracking.store`), journaled to a spool (:mod:`~pipeline.tracking.spool`) that
:mod:`~pipeline.tracking.sync` replays, the registered model (:mod:`~pipeline.tracking.registry`), provenance
tags (:mod:`~pipeline.tracking.provenance`, :mod:`~pipeline.tracking.fingerprint`) and the entry point every
``stages/`` script calls (:mod:`~pipeline.tracking.stage`). It imports only ``config`` and ``utils``: nothing
here changes what a stage computes."""
