"""GAN training: typed configs with the published recipes as presets (:mod:`.config`,
:mod:`.recipes`), Keras-semantics losses (:mod:`.losses`), deterministic sharded data
(:mod:`.data`), exact checkpoints (:mod:`.checkpoint`), torchrun data parallelism
(:mod:`.distributed`) and the trainer (:mod:`.trainer`). See docs/training.md."""
