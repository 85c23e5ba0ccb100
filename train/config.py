"""One typed settings object for a training run, written as `config.json` beside its outputs."""
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

from shards.files import atomic_write_json


# Initialisations (see train.model._init_weights and docs/PERFORMANCE.md for what each gave here):
#   "caffe"   the full-size default: Section 5 as Caffe's bvlc_alexnet replication runs it, biases
#             0.1 where the paper has 1 and N(0, 0.005) for fc6/fc7; it learns at batch 128;
#   "paper"   Section 5 literally: N(0, 0.01) weights, biases 1 in conv2, conv4, conv5, fc6, fc7;
#   "kaiming" the small-run recipe (reduced --width): Kaiming-normal on unit-scale input.
INITS = ("caffe", "paper", "kaiming")
# What the loaders feed the model (pipeline.build_loader's `mean`): "image" is the paper's
# 0-255 values minus the mean image (Section 2); "channel" is (x/255 - mu)/sigma per channel,
# unit scale, which Kaiming's derivation assumes.
INPUT_NORMS = ("image", "channel")
# Architecture switches for the paper's ablations (train.model.AlexNet): 2 columns is Figure 2,
# 1 the one-GPU net of Section 3.2; "overlapping" pooling (z=3, s=2) is Section 3.4's, and
# "traditional" z = s = 2.
COLUMNS = (2, 1)
POOLS = ("overlapping", "traditional")
# Learning-rate schedules (train.schedule): Section 5's "divide by 10 when the validation error
# stopped improving", or fixed epochs (lr_steps).
SCHEDULES = ("plateau", "step")
# How the model runs, not what it is (results equal to float rounding; issue 13 measures them):
# torch.compile's modes ("reduce-overhead" replays CUDA graphs), and the two columns' layers as
# two ops each ("split", Figure 2 as written) or as one grouped op when both columns share a
# device ("grouped", train.model.AlexNet).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CONVS = ("split", "grouped")
# How the input reaches the step (issue 22, docs/PERFORMANCE.md "Feeding the GPU"): the loader's
# hand-off ("float": normalised in DALI; "uint8": crops, normalised on the device by one fused op),
# the share of each batch decoded on the CPU cores, and the step on a high-priority CUDA stream.
HANDOFFS = ("float", "uint8")


def input_norm_for(init: str) -> str:
    """The input normalisation an init is built for: unit scale for Kaiming, the paper's otherwise."""
    return "channel" if init == "kaiming" else "image"


# Settings a --resume may change freely: how long, how often to log and checkpoint, threads, and
# where the run and the shards are (the shards' content is checked against the checkpoint).
RESUMABLE_CHANGES = ("shards", "out", "epochs", "max_steps", "log_every", "checkpoint_every", "num_threads",
                     "resume", "apply_changes", "handoff", "cpu_decode", "step_stream", "verify_shards",
                     "keep_checkpoints", "cache_dir", "cache_limit")


@dataclass
class TrainConfig:
    shards: str  # shard directory (alexnet preprocess output)
    out: str = "runs/alexnet"  # run directory
    epochs: int = 90  # Section 5: "roughly 90 cycles through the training set"
    max_steps: Optional[int] = None  # stop after this many steps in all, across resumes
    batch_size: int = 128  # per model replica (Section 5)
    lr: float = 0.01  # Section 5: initial learning rate
    momentum: float = 0.9  # Section 5
    weight_decay: float = 5e-4  # Section 5
    schedule: str = "plateau"  # "plateau": /10 when val error stops improving; "step": at lr_steps
    lr_drops: int = 3  # Section 5: "reduced three times prior to termination"
    patience: int = 2  # plateau: validations without improvement before a drop
    lr_steps: Tuple[int, ...] = (30, 60, 80)  # step schedule: epochs at which lr /= 10
    device: str = "auto"  # auto | cpu | cuda
    devices: Optional[Tuple[str, ...]] = None  # explicit column placement, e.g. ("cuda:0", "cuda:1")
    width: float = 1.0  # channel multiplier (1.0 = the paper's net)
    init: str = "caffe"  # caffe (full size) | paper (Section 5 literally) | kaiming (small runs)
    input_norm: Optional[str] = None  # image | channel; None: the init's (input_norm_for)
    columns: int = 2  # 2: Figure 2's net; 1: Section 3.2's one-GPU net
    lrn: bool = True  # Section 3.3's response normalisation (False: its ablation)
    pool: str = "overlapping"  # Section 3.4: overlapping (z=3, s=2) | traditional (z=s=2)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # with compile: default | reduce-overhead (CUDA graphs) | max-autotune
    conv: str = "split"  # split | grouped: the columns' layers as one op each when they share a device
    handoff: str = "float"  # float | uint8: what DALI hands to torch (pipeline.handoff)
    cpu_decode: float = 0.0  # share of each batch decoded on the CPU cores (GPU loaders)
    step_stream: bool = False  # the training step on a high-priority CUDA stream (train.step.StepStream)
    seed: int = 0
    lighting: float = 0.1  # Section 4.1: sigma of the PCA lighting alpha
    val_every: int = 1  # epochs between validations
    log_every: int = 20  # steps between metrics rows
    checkpoint_every: int = 0  # steps between checkpoints besides each epoch end (0: epoch ends only)
    keep_checkpoints: int = 3  # newest checkpoint-<step>.pt kept besides last.pt and best.pt (0: all)
    num_threads: Optional[int] = None  # DALI threads
    cache_dir: Optional[str] = None  # s3:// shards: the local shard cache (default $XDG_CACHE_HOME/alexnet)
    cache_limit: Optional[str] = None  # s3:// shards: the cache's size, e.g. "40G" (None: no limit)
    verify_shards: bool = True  # every shard's sha256 against the manifest first (shards.checksum; cached)
    resume: bool = False
    apply_changes: bool = False  # --resume: apply changed settings (recorded in resumes.jsonl) instead of refusing

    def __post_init__(self):
        if self.input_norm is None:  # resolved here, so config.json records what ran
            self.input_norm = input_norm_for(self.init)

    def save(self, run_dir) -> None:
        """`run_dir/config.json`: what runs from here on (rewritten by a resume that applies changes)."""
        atomic_write_json(os.path.join(run_dir, "config.json"), asdict(self))
