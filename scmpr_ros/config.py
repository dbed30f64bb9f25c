"""Typed configuration: one dataclass per section, filled from ``config/*.yaml``.

A YAML file holds any of the sections ``model``, ``lidar``, ``map``, ``retrieval``,
``training``, ``nodes``, ``filter`` (and ``camera``).  Unknown sections or keys, and values of the wrong
type or outside LIMITS, are refused with the key and the file named.  Each default lives once, in
these dataclasses; YAML files hold overrides.  ROS parameters: NodesConfig keys, plus ``retrieval.*``.

    cfg = load_config()                                   # defaults + config/scmpr.yaml (site overrides)
    cfg = load_config("config/train_nano.yaml", overrides={"retrieval.top_k": 5})  # + files, + overrides
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scmpr_ros.errors import ScmprError


class ConfigError(ScmprError, ValueError):
    """A configuration file or value the user must fix."""


@dataclass
class ModelConfig:
    """The SCM-PR image + LiDAR encoders (scmpr_ros/model)."""

    backbone: str = "nano"  # VMamba size: tiny | micro | nano
    image_height: int = 160  # encoder input size; camera images are resized to it
    image_width: int = 512
    d_state: int = 1
    ssm_ratio: float = 2.0
    scan_backend: str = "auto"  # auto|cuda|cpu|numba|torch|reference; auto: cuda on GPU, numba on CPU (SS2D trains too)
    feature_dim: int = 128  # SAFF output channels fed to NetVLAD
    netvlad_clusters: int = 16
    descriptor_dim: int = 256  # projection after NetVLAD; 0 keeps K*C
    lidar_dims: list[int] = field(default_factory=lambda: [32, 64, 128])
    label_embedding_dim: int = 8
    use_semantics: bool = True  # False removes SAFF, CSA and L_sem together (ablation base)
    use_saff: bool = True
    use_csa: bool = True
    use_lsem: bool = True
    lidar_in_channels: int = 7  # range-image channels (scmpr_ros.lidar.range_image.RANGE_CHANNELS)
    attention_dim: int = 64  # CSA query/key width
    drop_path_rate: float = 0.0  # stochastic depth in the VMamba blocks (training only)


@dataclass
class CameraConfig:
    """Reference camera used to crop LiDAR range images and bin the frustum semantic grid."""

    width: int = 1241
    height: int = 376
    fx: float = 718.856
    fy: float = 718.856
    cx: float = 607.1928
    cy: float = 185.2157


@dataclass
class LidarConfig:
    """Range-image projection (scmpr_ros/lidar/range_image.py)."""

    range_height: int = 64
    range_width: int = 1024
    fov_up_deg: float = 2.0
    fov_down_deg: float = -24.8
    min_range_m: float = 1.0
    max_range_m: float = 80.0
    crop_to_camera_fov: bool = True
    segmentation: str = "ground_truth"  # ground_truth | learned
    segmenter_weights: str = ""


@dataclass
class MapConfig:
    """Viewpoint generation for ``scmpr build-map`` (scmpr_ros/lidar/viewpoints.py)."""

    place_spacing_m: float = 2.0
    # Each place is rendered facing both ways (routes are driven both ways) and 1.5 m to either side (the
    # query lane): chosen on validation towns 302/303, R@1 68.9 / 68.6 % -> 78.0 / 71.9 % with the shipped
    # model, for 3x the viewpoints (map build 7 -> 27 s); yaw +-20 deg on top lowered it (docs/PROTOCOL.md).
    yaw_offsets_deg: list[float] = field(default_factory=lambda: [0.0, 180.0])
    lateral_offsets_m: list[float] = field(default_factory=lambda: [-1.5, 0.0, 1.5])
    voxel_size_m: float = 0.2
    render_radius_m: float = 60.0
    render_mode: str = "auto"  # auto (scan without lateral offset, else map) | scan | map
    splat_radius_m: float = 0.15  # disc radius of a map point when rendering from the map
    max_splat_px: int = 4  # cap on a splat's half size in pixels (near points)
    grid_rows: int = 4
    grid_cols: int = 8
    grid_min_fraction: float = 0.02  # class present in a cell if >= this share of its labelled pixels
    descriptor_dtype: str = "float16"  # float16 | float32
    batch_size: int = 32


@dataclass
class RetrievalConfig:
    """Vector search + semantic re-rank (scmpr_ros/retrieval)."""

    top_k: int = 10  # hypotheses returned
    rerank_k: int = 50  # candidates from the vector index that are re-ranked
    alpha: float = 1.0  # weight of the descriptor cosine
    beta: float = 1.0  # weight of the semantic overlap psi (chosen on a validation town, models/README.md)
    # above this many viewpoints an ANN index is used: exact search is memory-bound (~25 ms per query
    # at 100k x 256 float32 on 2 cores), IVF answers in < 1 ms with recall@10 ~1 on place-like data
    ann_threshold: int = 50_000
    ann_type: str = "ivf"  # ivf | hnsw
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 80
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32


@dataclass
class TrainingConfig:
    """``scmpr train`` (scmpr_ros/training)."""

    epochs: int = 10
    steps_per_epoch: int = 0  # 0 = one pass over the pairs
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    temperature: float = 0.07
    learn_temperature: bool = True
    contrastive: str = "infonce"  # infonce | triplet
    triplet_margin: float = 0.3
    lambda_sem: float = 0.1
    mu_seg: float = 1.0
    positive_radius_m: float = 3.0
    negative_radius_m: float = 25.0
    augment: bool = True
    amp: bool = True  # only used on CUDA
    num_workers: int = 0
    seed: int = 0
    threads: int = 0  # 0 = torch default
    val_every: int = 1
    augment_strength: float = 1.0  # scale of the photometric augmentation ranges
    frame_stride: int = 1  # use every n-th frame of each pass as a training place
    sequences: list[str] = field(default_factory=list)  # empty: all passes (synthetic manifest) / all usable
    val_data: str = ""  # dataset dir held out for validation R@1 ("" = a split of the training data)
    val_fraction: float = 0.15  # without val_data: share of the places (spatial split) held out
    val_max_queries: int = 300  # per condition; 0 = all
    kmeans_batches: int = 4  # batches of features for the NetVLAD k-means initialisation
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    min_lr_ratio: float = 0.02  # cosine schedule ends at lr * min_lr_ratio
    amp_dtype: str = "bfloat16"  # bfloat16 | float16 (CUDA only)
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch
    log_every: int = 10  # steps between JSONL metric lines
    prototype_momentum: float = 0.9  # EMA of the LiDAR class prototypes fed to CSA while training
    time_budget_s: float = 0.0  # > 0: shorten the schedule to end within this wall time (shared machines)
    # Near negatives (training/batches.py place_batches): this share of each batch's places comes in
    # groups of near_negative_group places near_negative_min_m..near_negative_max_m from the group's
    # first place (any pass of the same town) and > near_negative_min_m from each other; the rest of
    # the batch stays > negative_radius_m apart.  0 = every place > negative_radius_m (before v4).
    near_negative_share: float = 0.0
    near_negative_min_m: float = 6.0  # > positive_radius_m and the 5 m evaluation threshold: true negatives
    near_negative_max_m: float = 15.0
    near_negative_group: int = 2  # places per near group (>= 2)
    # Positives from map renders: probability that an item's LiDAR side is the range image rendered
    # from its town's accumulated mapping-pass map at the frame's pose (``build-map``'s renderer in
    # "map" mode, cropped to the camera FOV) instead of its own scan; > 0 builds the renders into the
    # pair cache (once).  0 = the scan only (before v4).
    map_render_positives: float = 0.0

    def __post_init__(self):
        if not (0.0 <= self.near_negative_share <= 1.0 and 0.0 <= self.map_render_positives <= 1.0):
            raise ConfigError(
                "training.near_negative_share and training.map_render_positives must lie in [0, 1], got "
                f"{self.near_negative_share} and {self.map_render_positives}"
            )
        if self.near_negative_share > 0 and not (
            self.positive_radius_m < self.near_negative_min_m < self.near_negative_max_m
            and self.near_negative_group >= 2
        ):
            raise ConfigError(
                "training: near negatives need positive_radius_m < near_negative_min_m < near_negative_max_m "
                f"and near_negative_group >= 2; got {self.positive_radius_m}, {self.near_negative_min_m}, "
                f"{self.near_negative_max_m}, {self.near_negative_group}"
            )


@dataclass
class NodesConfig:
    """ROS 2 node parameters (scmpr_ros/nodes); the names are the ROS parameter names.

    The localizer also declares the ``retrieval`` section as dotted parameters (``retrieval.top_k``)."""

    map_file: str = ""
    model: str = ""
    device: str = "auto"  # auto | cpu | cuda
    image_topic: str = "/camera/image_raw"
    camera_info_topic: str = "/camera/camera_info"
    odom_topic: str = ""  # nav_msgs/Odometry for the filter's motion; empty = image only (road-graph motion)
    filter_enabled: bool = True  # run the localization filter along the drive (~/filtered_pose, /initialpose)
    image_reliability: str = "best_effort"  # best_effort (sensor-data QoS) | reliable (image subscription)
    no_image_warn_s: float = 5.0  # diagnostics WARN when a publisher is matched but no image arrived for this long
    frame_id: str = "map"
    publish_initialpose: bool = False
    min_confidence: float = 0.02
    consistent_frames: int = 3
    consistency_radius_m: float = 5.0
    diagnostics_period_s: float = 1.0
    threads: int = 2
    verify_map_checksum: bool = True  # localizer checks the map content against its stored sha256 (one read pass)
    max_published_poses: int = 20000  # map_server decimates the viewpoint PoseArray/markers to this many
    covariance_temperature: float = 0.05  # score units: hypothesis weight exp(-(s_best - s_i) / T)
    position_sigma_floor_m: float = 2.0  # added to the position std-dev (viewpoint spacing)
    yaw_sigma_floor_deg: float = 10.0  # added to the heading std-dev


@dataclass
class FilterConfig:
    """The localization filter along the drive (scmpr_ros/localization/filter.py); units in each name or comment.

    temperature, the likelihood floors, the recovery shares and converge_* were chosen on validation towns
    302, 303 and 306-309 with the shipped model (``scmpr evaluate --filter mcl``; docs/PROTOCOL.md), never on
    a test town; likelihood_floor and converge_frames (odometry) last in session 5 with model v5 on the
    HDL-64E validation towns 302, 303, 306 and 307, hypotheses_image_only in session 6 with v6 on the same towns."""

    num_particles: int = 2000  # particles P
    hypotheses: int = 10  # re-ranked hypotheses per frame the filter weighs (best first), with odometry
    hypotheses_image_only: int = 50  # ... with image-only (road-graph) motion (both at most retrieval.rerank_k)
    temperature: float = 0.5  # T: score -> relative likelihood exp((score - best score) / T)
    match_radius_m: float = 6.0  # a particle is near a candidate viewpoint within this distance (m)
    match_sigma_m: float = 3.0  # Gaussian fall-off of a candidate's likelihood with distance (m)
    heading_gate_deg: float = 45.0  # ... and with heading within this many degrees of the viewpoint's
    likelihood_floor: float = 0.2  # relative likelihood of a particle near no candidate (after an odometry update)
    likelihood_floor_image_only: float = 0.3  # ... after an image-only (road-graph) motion update
    recovery_share: float = 0.003  # share of particles redrawn around the top hypotheses each frame
    recovery_share_image_only: float = 0.01  # ... when converged with image-only motion
    recovery_share_unconverged: float = 0.01  # ... while the filter has not converged
    recovery_share_unconverged_image_only: float = 0.05  # ... while unconverged with image-only motion
    recovery_top_k: int = 5  # number of top hypotheses the recovery particles are drawn around
    recovery_pos_std_m: float = 2.0  # position std-dev of drawn particles around a viewpoint (m)
    recovery_yaw_std_deg: float = 8.0  # heading std-dev of drawn particles (degrees)
    odom_noise_trans: float = 0.05  # translation std-dev per metre travelled (fraction)
    odom_noise_rot: float = 0.05  # rotation std-dev per radian turned (rad/rad)
    odom_noise_yaw_per_m: float = 0.003  # heading std-dev per metre travelled (rad/m)
    odom_floor_trans_m: float = 0.05  # translation std-dev added every step (m)
    odom_floor_rot_rad: float = 0.005  # rotation std-dev added every step (rad)
    graph_max_speed_mps: float = 20.0  # image-only: particle speeds lie in [0, this] (m/s)
    graph_speed_walk_mps2: float = 1.0  # image-only: speed random-walk std-dev per second of dt (m/s^2)
    graph_snap_radius_m: float = 8.0  # image-only: a particle follows viewpoints within this distance (m)
    graph_step_m: float = 5.0  # image-only: longest drive between two road lookups; longer steps are split (m)
    graph_heading_gate_deg: float = 60.0  # image-only: ... whose heading is within this of its own (deg)
    graph_heading_gain: float = 1.0  # image-only: share of the heading error to the viewpoint removed per step
    graph_lateral_gain: float = 0.5  # image-only: share of the lateral offset to the viewpoint's line removed
    graph_lateral_m: float = 2.5  # image-only: bound on the lateral offset from the viewpoint's line (m)
    graph_yaw_noise_deg: float = 20.0  # image-only: heading noise per sqrt(second) (deg); picks branches at junctions
    graph_uturn_rate_hz: float = 0.5  # image-only: chance per second that a particle turns around on the spot
    graph_lost_pos_std_m: float = 2.0  # image-only: random walk of particles off the graph, per sqrt(s) (m)
    graph_lost_yaw_std_deg: float = 20.0  # image-only: ... and of their heading, per sqrt(s) (deg)
    converge_radius_m: float = 3.0  # converged needs the mode's weighted RMS radius within this (m)
    converge_mode_weight: float = 0.95  # ... and at least this share of the weight in the mode
    converge_frames: int = 5  # ... for this many consecutive frames, on the same cluster (after an odometry update)
    converge_frames_image_only: int = 8  # ... after an image-only (road-graph) motion update
    converge_support_frames: int = 3  # ... and a hypothesis near the mode within the last this many frames
    cluster_radius_m: float = 5.0  # the mode is the heaviest cluster of this radius (m)
    seed: int = 0  # seed of the filter's random generator

    def __post_init__(self):
        for field_ in dataclasses.fields(self):
            value = getattr(self, field_.name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"filter.{field_.name} must be a finite number >= 0, got {value!r}")
        if self.num_particles < 10 or self.temperature <= 0 or self.match_sigma_m <= 0:
            raise ConfigError(
                "filter: needs num_particles >= 10, temperature > 0 and match_sigma_m > 0; "
                f"got {self.num_particles}, {self.temperature}, {self.match_sigma_m}"
            )
        if (
            not 0
            < min(self.likelihood_floor, self.likelihood_floor_image_only)
            <= max(self.likelihood_floor, self.likelihood_floor_image_only)
            <= 1
            or max(
                self.recovery_share,
                self.recovery_share_image_only,
                self.recovery_share_unconverged,
                self.recovery_share_unconverged_image_only,
            )
            >= 1
        ):
            raise ConfigError(
                "filter: needs 0 < likelihood_floor <= 1 and recovery shares < 1; got "
                f"{self.likelihood_floor}, {self.recovery_share}, {self.recovery_share_unconverged}"
            )
        if self.recovery_top_k < 1 or self.cluster_radius_m <= 0 or self.graph_snap_radius_m <= 0:
            raise ConfigError("filter: needs recovery_top_k >= 1, cluster_radius_m > 0 and graph_snap_radius_m > 0")
        if min(self.hypotheses, self.hypotheses_image_only) < 1:
            raise ConfigError(
                f"filter: needs hypotheses >= 1 and hypotheses_image_only >= 1, got {self.hypotheses} "
                f"and {self.hypotheses_image_only}"
            )

    def hypothesis_count(self, image_only: bool) -> int:
        """How many of a frame's hypotheses (best first) the filter weighs, with odometry or image only."""
        return int(self.hypotheses_image_only if image_only else self.hypotheses)


#: Allowed values of the settings that have limits: (section, key) -> (minimum, maximum) or a tuple of choices.
LIMITS: dict[tuple[str, str], tuple] = {
    ("retrieval", "top_k"): (1, None),
    ("retrieval", "rerank_k"): (1, None),
    ("retrieval", "alpha"): (0.0, None),
    ("retrieval", "beta"): (0.0, None),
    ("retrieval", "ann_type"): ("ivf", "hnsw"),
    ("nodes", "device"): ("auto", "cpu", "cuda"),
    ("nodes", "image_reliability"): ("best_effort", "reliable"),
    ("nodes", "no_image_warn_s"): (0.1, None),
    ("nodes", "threads"): (0, None),
    ("nodes", "min_confidence"): (0.0, None),
    ("nodes", "consistent_frames"): (1, None),
    ("nodes", "consistency_radius_m"): (0.0, None),
    ("nodes", "diagnostics_period_s"): (0.05, None),
    ("nodes", "max_published_poses"): (1, None),
    ("nodes", "covariance_temperature"): (1e-6, None),
    ("nodes", "position_sigma_floor_m"): (0.0, None),
    ("nodes", "yaw_sigma_floor_deg"): (0.0, None),
    ("map", "place_spacing_m"): (0.1, None),
    ("map", "render_mode"): ("auto", "scan", "map"),
    ("map", "descriptor_dtype"): ("float16", "float32"),
    ("lidar", "segmentation"): ("ground_truth", "learned"),
}


def check_limits(section_name: str, key: str, value: Any, where: str) -> None:
    """Raise ConfigError when ``value`` is outside the LIMITS of ``section_name.key``."""
    limit = LIMITS.get((section_name, key))
    if limit is None:
        return
    if isinstance(value, str):
        if value not in limit:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(limit)}")
        return
    low, high = limit
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{where}: {value!r} must be {bounds}")


@dataclass
class ScmprConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    map: MapConfig = field(default_factory=MapConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    nodes: NodesConfig = field(default_factory=NodesConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def update_section(section: Any, values: dict[str, Any], where: str, section_name: str = "") -> Any:
    """Return a copy of dataclass ``section`` with ``values`` applied, strictly checked (types, LIMITS)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(values).__name__}")
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in dataclasses.fields(section)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")
        changes[key] = _check_value(value, hints[key], f"{where}.{key}")
        check_limits(section_name, key, changes[key], f"{where}.{key}")
    return dataclasses.replace(section, **changes)


def config_from_dict(data: dict[str, Any], base: ScmprConfig | None = None, source: str = "<dict>") -> ScmprConfig:
    cfg = base if base is not None else ScmprConfig()
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    sections = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section '{name}' (known: {', '.join(sorted(sections))})")
        changes[name] = update_section(getattr(cfg, name), values or {}, f"{source}: {name}", name)
    return dataclasses.replace(cfg, **changes)


def nest_dotted(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"retrieval.top_k": 5} -> {"retrieval": {"top_k": 5}} (ROS parameter names are dotted)."""
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, dot, key = name.partition(".")
        if not dot or not key:
            raise ConfigError(f"override {name!r}: expected section.key (e.g. retrieval.top_k)")
        nested.setdefault(section, {})[key] = value
    return nested


def site_config_file() -> Path:
    """config/scmpr.yaml: the site's overrides, applied by every command and node."""
    return default_config_dir() / "scmpr.yaml"


def load_config(
    *paths: str | Path, overrides: dict[str, Any] | None = None, site: bool = True, base: ScmprConfig | None = None
) -> ScmprConfig:
    """The one way to assemble a configuration: dataclass defaults, then config/scmpr.yaml (``site``),
    then each YAML file in order, then ``overrides`` ({"section.key": value} or {"section": {...}})."""
    cfg = base if base is not None else ScmprConfig()
    files = [site_config_file()] if site and site_config_file().is_file() else []
    for path in [*files, *map(Path, paths)]:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        cfg = config_from_dict(data, cfg, str(path))
    if overrides:
        dotted = {k: v for k, v in overrides.items() if "." in k}
        nested = {k: v for k, v in overrides.items() if "." not in k}
        for section, values in nest_dotted(dotted).items():
            nested.setdefault(section, {}).update(values)
        cfg = config_from_dict(nested, cfg, "overrides")
    return cfg


def default_config_dir() -> Path:
    """config/ of the source tree, or share/scmpr_ros/config of an installed package."""
    here = Path(__file__).resolve().parent.parent / "config"
    if here.is_dir():
        return here
    try:  # installed with colcon / ament
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("scmpr_ros")) / "config"
    except Exception:  # noqa: BLE001 - fall through to a clear error at use
        return here


def default_models_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "models"
    if here.is_dir():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("scmpr_ros")) / "models"
    except Exception:  # noqa: BLE001
        return here
