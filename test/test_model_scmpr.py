"""SCMPRModel: encoder contracts, gradients, ablation switches, CSA prototypes, preprocessing."""

import dataclasses

import numpy as np
import pytest
import torch

from scmpr_ros.config import ConfigError, ModelConfig
from scmpr_ros.errors import InputError
from scmpr_ros.model import SCMPRModel, losses, preprocess_images
from scmpr_ros.semantics import IGNORE_ID, NUM_CLASSES

H, W = 64, 128  # small images keep the tests fast
HR, WR = 32, 128
C_IN = 7


def small_cfg(**kw):
    return dataclasses.replace(
        ModelConfig(
            image_height=H,
            image_width=W,
            lidar_dims=[16, 32, 64],
            feature_dim=32,
            netvlad_clusters=8,
            descriptor_dim=64,
            attention_dim=16,
        ),
        **kw,
    )


def batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, H, W, generator=g)
    rng = torch.randn(b, C_IN, HR, WR, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (b, HR, WR), generator=g)
    labels[:, :5] = IGNORE_ID
    image_labels = torch.randint(0, NUM_CLASSES, (b, H, W), generator=g)
    image_labels[:, ::2] = IGNORE_ID
    return images, rng, labels, image_labels


def n_params(module):
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def test_output_shapes_and_unit_norm():
    torch.manual_seed(0)
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN).eval()
    images, rng, labels, _ = batch(3)
    with torch.no_grad():
        enc = m.encode_image(images)
        lid = m.encode_lidar(rng, labels)
    d = m.descriptor_dim
    assert d == 64
    assert enc.descriptor.shape == (3, d) and lid.descriptor.shape == (3, d)
    assert torch.allclose(enc.descriptor.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(lid.descriptor.norm(dim=1), torch.ones(3), atol=1e-5)
    assert enc.seg_logits.shape == (3, NUM_CLASSES, H, W)
    assert enc.class_features.shape == (3, NUM_CLASSES, 32) and enc.class_present.dtype == torch.bool
    assert lid.class_features.shape == (3, NUM_CLASSES, 32) and lid.class_present.shape == (3, NUM_CLASSES)
    # a class absent from the labels is not present
    labels2 = labels.clone()
    labels2[labels2 == 3] = IGNORE_ID
    with torch.no_grad():
        lid2 = m.encode_lidar(rng, labels2)
    assert not lid2.class_present[:, 3].any()


def test_descriptor_dim_zero_keeps_k_times_c():
    m = SCMPRModel(small_cfg(descriptor_dim=0), lidar_in_channels=C_IN).eval()
    assert m.descriptor_dim == 8 * 32
    with torch.no_grad():
        assert m.encode_image(batch(1)[0]).descriptor.shape == (1, 256)


def test_forward_backward_reaches_every_trainable_parameter():
    torch.manual_seed(1)
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN).train()
    images, rng, labels, image_labels = batch(4)
    protos = torch.randn(NUM_CLASSES, 32, requires_grad=False)
    enc_default = m.encode_image(images[:2])  # the learned default prototypes take part too
    enc = m.encode_image(images[2:], protos)
    lid = m.encode_lidar(rng[2:], labels[2:])
    lid_all = m.encode_lidar(rng[:2], labels[:2])
    l_con = losses.info_nce(
        torch.cat([enc_default.descriptor, enc.descriptor]),
        torch.cat([lid_all.descriptor, lid.descriptor]),
        m.temperature(),
    )
    l_sem = losses.semantic_consistency_loss(
        enc.class_features, enc.class_present, lid.class_features, lid.class_present
    )
    l_seg = losses.segmentation_loss(torch.cat([enc_default.seg_logits, enc.seg_logits]), image_labels)
    total = losses.total_loss(l_con, l_sem, l_seg, 0.1, 1.0)
    assert torch.isfinite(total)
    total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_ablation_flags_remove_exactly_their_parameters():
    full = SCMPRModel(small_cfg(), lidar_in_channels=C_IN)
    no_saff = SCMPRModel(small_cfg(use_saff=False), lidar_in_channels=C_IN)
    no_csa = SCMPRModel(small_cfg(use_csa=False), lidar_in_channels=C_IN)
    no_lsem = SCMPRModel(small_cfg(use_lsem=False), lidar_in_channels=C_IN)
    none = SCMPRModel(small_cfg(use_semantics=False), lidar_in_channels=C_IN)
    total = n_params(full)
    saff_only = sum(n_params(getattr(full.head, k)) for k in ("seg", "gate", "seg_cls", "seg_detail"))
    # SAFF: the segmentation branch and the gate, nothing else
    assert n_params(no_saff) == total - saff_only
    assert not hasattr(no_saff.head, "seg") and no_saff.use_saff is False
    # CSA: the attention module, nothing else
    assert no_csa.csa is None and n_params(no_csa) == total - n_params(full.csa)
    # L_sem is a loss: no parameters of its own, the model is the same
    assert n_params(no_lsem) == total and no_lsem.use_lsem is False and full.use_lsem is True
    # no semantics: SAFF + CSA + the LiDAR label embedding (and the first conv's label input channels)
    emb = n_params(full.lidar.label_embed)
    stem_extra = n_params(full.lidar.stem) - n_params(none.lidar.stem)
    assert none.lidar.label_embed is None and stem_extra > 0
    assert n_params(none) == total - saff_only - n_params(full.csa) - emb - stem_extra
    # outputs of the ablated models
    images, rng, labels, _ = batch(1)
    with torch.no_grad():
        e = no_saff.encode_image(images)
        assert e.seg_logits is None and e.class_features.shape == (1, NUM_CLASSES, 32)  # from CSA weights
        e = none.encode_image(images)
        assert e.seg_logits is None and e.class_features is None and e.class_present is None
        lid = none.encode_lidar(rng)  # geometry only: no labels needed
        assert lid.class_features is None and lid.descriptor.shape == (1, 64)


def test_lsem_without_a_class_source_is_refused():
    with pytest.raises(ConfigError, match="use_lsem"):
        SCMPRModel(small_cfg(use_saff=False, use_csa=False), lidar_in_channels=C_IN)
    SCMPRModel(small_cfg(use_saff=False, use_csa=False, use_lsem=False), lidar_in_channels=C_IN)


def test_csa_uses_prototypes_and_defaults_equal_no_context():
    torch.manual_seed(2)
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN).eval()
    images = batch(2)[0]
    with torch.no_grad():
        d_none = m.encode_image(images).descriptor
        d_default = m.encode_image(images, m.csa.default_prototypes.clone()).descriptor
        d_other = m.encode_image(images, torch.randn(NUM_CLASSES, 32) * 3).descriptor
    assert torch.allclose(d_none, d_default, atol=1e-6)
    assert (d_none - d_other).abs().max() > 1e-3
    with pytest.raises(Exception, match="prototypes must be"):
        m.encode_image(images, torch.randn(NUM_CLASSES, 31))
    # without CSA the prototypes have no effect
    m2 = SCMPRModel(small_cfg(use_csa=False), lidar_in_channels=C_IN).eval()
    with torch.no_grad():
        a = m2.encode_image(images).descriptor
        b = m2.encode_image(images, torch.randn(NUM_CLASSES, 32)).descriptor
    assert torch.equal(a, b)


def test_semantic_prototypes_are_map_wide_class_means():
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN)
    cf = torch.randn(5, NUM_CLASSES, 32)
    present = torch.ones(5, NUM_CLASSES, dtype=torch.bool)
    present[:, 4] = False  # never seen: learned default
    present[2:, 1] = False  # seen in the first two only
    p = m.semantic_prototypes(cf, present)
    assert p.shape == (NUM_CLASSES, 32)
    assert torch.allclose(p[0], cf[:, 0].mean(0), atol=1e-6)
    assert torch.allclose(p[1], cf[:2, 1].mean(0), atol=1e-6)
    assert torch.allclose(p[4], m.csa.default_prototypes[4].detach())
    # order of the viewpoints does not matter: no place identity survives
    perm = torch.randperm(5)
    assert torch.allclose(m.semantic_prototypes(cf[perm], present[perm]), p, atol=1e-6)
    with pytest.raises(InputError):
        m.semantic_prototypes(cf[:, :, :8], present)


def test_init_netvlad_sets_centroids_from_features():
    torch.manual_seed(3)
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN)
    before_rgb = m.netvlad_rgb.centroids.detach().clone()
    before_lid = m.netvlad_lidar.centroids.detach().clone()
    images, rng, labels, _ = batch(2)
    m.train()
    m.init_netvlad(images, rng, labels, seed=0)
    assert m.training  # mode restored
    assert not torch.allclose(before_rgb, m.netvlad_rgb.centroids)
    assert not torch.allclose(before_lid, m.netvlad_lidar.centroids)
    assert torch.allclose(m.netvlad_rgb.centroids.norm(dim=1), torch.ones(8), atol=1e-5)


def test_temperature_is_learned_or_fixed():
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN)
    assert abs(float(m.temperature().detach()) - 0.07) < 1e-6 and m.log_temperature.requires_grad
    m.set_temperature(0.1, learnable=False)
    assert abs(float(m.temperature().detach()) - 0.1) < 1e-6 and not m.log_temperature.requires_grad
    with pytest.raises(ConfigError):
        m.set_temperature(5.0)


def test_input_validation():
    m = SCMPRModel(small_cfg(), lidar_in_channels=C_IN).eval()
    images, rng, labels, _ = batch(1)
    with pytest.raises(InputError, match="images must be"):
        m.encode_image(images[:, :2])
    with pytest.raises(InputError, match="range input"):
        m.encode_lidar(rng[:, :5], labels)
    bad = labels.clone()
    bad[0, 0, 0] = 40  # a raw SemanticKITTI id, not a common one
    with pytest.raises(InputError, match="outside"):
        m.encode_lidar(rng, bad)
    with pytest.raises(InputError, match="pass range labels"):
        m.encode_lidar(rng)
    with pytest.raises(ConfigError, match="backbone"):
        SCMPRModel(small_cfg(backbone="large"))
    with pytest.raises(ConfigError, match="scan_backend"):
        SCMPRModel(small_cfg(scan_backend="gpu"))


def test_lidar_in_channels_argument_is_recorded():
    m = SCMPRModel(small_cfg(), lidar_in_channels=5)
    assert m.cfg.lidar_in_channels == 5 and m.lidar.in_channels == 5


def test_lidar_channel_default_matches_range_image_module():
    from scmpr_ros.lidar.range_image import RANGE_CHANNELS

    assert ModelConfig().lidar_in_channels == RANGE_CHANNELS


def test_preprocess_images():
    cfg = small_cfg()
    rgb = np.zeros((376, 1241, 3), dtype=np.uint8)
    rgb[:, :620] = 255
    x = preprocess_images([rgb, rgb[:100, :300]], cfg)
    assert x.shape == (2, 3, H, W) and x.dtype == torch.float32
    white = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(x[0, :, :, 0].mean(dim=1).numpy(), white, atol=1e-4)  # left: white
    assert x[0, 0, 0, -1] < 0  # right: black
    with pytest.raises(InputError, match="uint8"):
        preprocess_images([rgb.astype(np.float32)], cfg)
    with pytest.raises(InputError, match="no images"):
        preprocess_images([], cfg)
    with pytest.raises(InputError):
        preprocess_images([rgb[:, :, :2]], cfg)


@pytest.mark.parametrize("label_dim", [8, 0])
def test_lidar_fast_cpu_path_computes_the_plain_function_and_gradients(label_dim):
    """The folded one-hot stem, the subsampled strided shortcuts and channels-last layout change only
    how the LiDAR tower computes, not what: outputs and every parameter's gradient match the plain path."""
    import copy

    from scmpr_ros.model.lidar_encoder import LidarEncoder

    torch.manual_seed(0)
    fast = LidarEncoder(7, dims=(16, 32), feature_dim=24, label_embedding_dim=label_dim).train()
    plain = copy.deepcopy(fast)
    plain.fast_cpu_path = False
    assert fast.fast_cpu_path and all(b.subsample_shortcut for b in fast.stages)
    assert not any(b.subsample_shortcut for b in plain.stages)
    x = torch.randn(3, 7, 16, 61)  # odd width: the strided shortcut's output size must still match
    labels = torch.randint(0, NUM_CLASSES, (3, 16, 61))
    labels[torch.rand(labels.shape) < 0.3] = IGNORE_ID
    out_fast, frac_fast = fast(x, labels)
    out_plain, frac_plain = plain(x, labels)
    assert out_fast.shape == out_plain.shape
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frac_fast, frac_plain)
    weights = torch.randn_like(out_plain)
    (out_fast * weights).sum().backward()
    (out_plain * weights).sum().backward()
    for (name, p_fast), (_, p_plain) in zip(fast.named_parameters(), plain.named_parameters()):
        assert p_fast.grad is not None, name
        scale = float(p_plain.grad.abs().max())  # float sums in another order: compare to the gradient's size
        assert float((p_fast.grad - p_plain.grad).abs().max()) <= 1e-5 * scale + 1e-7, name
    if label_dim:  # the table's rows of labels present in the batch received a gradient
        assert fast.label_embed.weight.grad.abs().sum(1).gt(0).sum() >= NUM_CLASSES
