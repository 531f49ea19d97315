"""Reading prepared data: where each role's files live (:mod:`~pipeline.data.layout`), COCO annotation files
(:mod:`~pipeline.data.coco`), the instance dataset and batch collate (:mod:`~pipeline.data.dataset`) and
YOLACT's train and eval transforms (:mod:`~pipeline.data.transforms`). It depends on ``config`` and ``utils``
only; the prepare stage writes what it reads."""
