"""fastshower: fast calorimeter shower simulation with deep generative models.

Pipeline (one sub-package each): simulate -> data -> models -> train -> validate -> infer.
Shared convention: a shower is a float32 array ``(n_events, nx, ny, nz)`` of energy deposited in the
active material per cell, in GeV, z along the depth; ``primary_energy`` in GeV and
``incident_angle`` (polar angle, rad, 90 deg = normal incidence) travel with it.
"""

__version__ = "0.1.0"
