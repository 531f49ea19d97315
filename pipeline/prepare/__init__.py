"""The prepare stage's library: read and check raw COCO annotations (:mod:`~pipeline.prepare.annotations`) and
images (:mod:`~pipeline.prepare.images`), drop what is broken (:mod:`~pipeline.prepare.cleaning`), assign the
train, val and test roles without overlap (:mod:`~pipeline.prepare.roles`) and summarise each split
(:mod:`~pipeline.prepare.summary`). It writes the layout :mod:`pipeline.data.layout` describes."""
