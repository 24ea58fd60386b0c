from .dense_heads import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .grow import (EXPERT_INITS, GATE_INITS, GrowError,  # noqa: F401
                   check_grown_expert_map, check_grown_label_space,
                   check_new_dataset_names, fit_new_gate_rows,
                   grow_state_dict, grown_meta, source_experts_from_counts)
from .grow_checkpoint import format_growth, grow_checkpoint  # noqa: F401
from .upcycle import upcycle_dense_state_dict  # noqa: F401
