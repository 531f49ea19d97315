"""The prepare stage's library: read and check raw COCO annotations (:mod:`~pipeline.prepare.annotations`) and
images (:mod:`~pipeline.prepare.images`), drop what is broken (:mod:`~pipeline.prepare.cleaning`), assign the
train, val and test roles (:mod:`~pipeline.prepare.roles`), stop on an image in two of them
(:mod:`~pipeline.prepare.overlap`) and summarise each split (:mod:`~pipeline.prepare.summary`). It writes the
layout :mod:`pipeline.data.layout` describes."""
