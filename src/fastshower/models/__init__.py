"""Shower generators and discriminators (3DGAN family) and the registry from name to builder.

Build with :func:`fastshower.models.registry.build_generator` / ``build_discriminator``; save and
load with ``save_generator`` / ``load_generator``. Contracts: :mod:`fastshower.models.base`.
"""
