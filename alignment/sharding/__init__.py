"""Device mesh and the logical-axis rules that lay parameters and batches out on it."""

from alignment.sharding.mesh import AXES, MeshConfig, make_mesh
from alignment.sharding.rules import (
    LOGICAL_AXIS_RULES, activation_constraints, activation_sharding, batch_sharding,
    batch_shardings, fit_to_shape, logical_to_shardings, param_shardings, replicated,
    with_activation_constraints)
