"""Data for learned DVC: synthetic bead pairs, volume and flow files, augmentation, batch streams.

numpy/scipy only (no JAX), so every piece runs in loader threads. Conventions: a volume is (X0, X1, X2) in file
order; a flow is float32 (3, X0, X1, X2), channel c = displacement along array axis c, reference -> deformed,
I2(x + u(x)) ~ I1(x).
"""

from raftdvc_jax.data.augment import Augment
from raftdvc_jax.data.augment import crop
from raftdvc_jax.data.augment import flip
from raftdvc_jax.data.augment import random_crop
from raftdvc_jax.data.augment import rot90
from raftdvc_jax.data.datasets import batches
from raftdvc_jax.data.datasets import collate
from raftdvc_jax.data.datasets import NpzDataset
from raftdvc_jax.data.datasets import PairDirectoryDataset
from raftdvc_jax.data.datasets import SyntheticDataset
from raftdvc_jax.data.io import read_flow
from raftdvc_jax.data.io import read_pair_files
from raftdvc_jax.data.io import read_sample
from raftdvc_jax.data.io import read_volume
from raftdvc_jax.data.io import VolumeError
from raftdvc_jax.data.io import write_flow
from raftdvc_jax.data.io import write_sample
from raftdvc_jax.data.io import write_volume
from raftdvc_jax.data.synthetic import FAMILIES
from raftdvc_jax.data.synthetic import make_pair
from raftdvc_jax.data.synthetic import preset
from raftdvc_jax.data.synthetic import PRESETS
from raftdvc_jax.data.synthetic import SyntheticConfig
