"""Reference simulators that produce ground truth.

``fastshower.simulate.gflash``: the Grindhammer-Peters (GFlash) parametrisation, vectorised in
numpy, always available. ``fastshower.simulate.geant4``: full simulation and the fast-simulation
hook through ``geant4_pybind`` (optional dependency). Import the sub-module you need.
"""
