"""lscindex.model: encoder shapes, normalisation and config handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lscindex import VectorSystem
from lscindex.errors import ConfigError
from lscindex.model import (
    DATA_CONFIG_KEYS,
    ModelConfig,
    create_eval_transform,
    create_model,
    create_train_transform,
)


def lsc_config(**kw) -> ModelConfig:  # type: ignore[no-untyped-def]
    system = VectorSystem.create("v21", 600_000)
    return ModelConfig(backbone="test_resnet", n_classes=600_000, system=system.to_dict(), **kw)


def test_lsc_encoder_outputs_unit_vectors_of_the_system_dim() -> None:
    model = create_model(lsc_config()).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 108) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    # nothing class-sized in the model: 600k classes cost the same parameters as 100
    small = create_model(
        ModelConfig(
            backbone="test_resnet",
            n_classes=100,
            system=VectorSystem.create("v21", 100, dim=108).to_dict(),
        )
    )
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small.parameters())


def test_ce_encoder_outputs_logits_and_embeds_features() -> None:
    model = create_model(ModelConfig(backbone="test_resnet", head="ce", n_classes=11)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 11)
    emb = model.embed(x)
    assert emb.shape == (2, model.embed_dim) and model.embed_dim == model.feature_dim
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_data_config_uses_the_configured_size() -> None:
    model = create_model(lsc_config(img_size=48))
    assert model.data_config["input_size"] == (3, 48, 48)
    assert len(model.data_config["mean"]) == 3


def test_the_eval_transform_is_timms_transform_of_the_data_config() -> None:
    import timm.data
    from PIL import Image

    model = create_model(lsc_config(img_size=24))
    config = model.data_config
    assert set(config) == set(DATA_CONFIG_KEYS)
    assert config["crop_pct"] == 1.0 and config["crop_mode"] == "center"  # not timm's 0.95
    assert timm.data.resolve_data_config({}, model=model.backbone)["crop_pct"] != 1.0
    rng = np.random.default_rng(0)
    plain = timm.data.create_transform(**config)
    for width, height in ((24, 24), (40, 29), (17, 52)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        out = create_eval_transform(config)(image)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
        assert torch.equal(out, plain(image))
    with pytest.raises(ConfigError, match=r"exactly the keys .*got 'input_size', 'interp"):
        create_eval_transform({k: v for k, v in config.items() if k != "crop_pct"})
    with pytest.raises(ConfigError, match="'is_training'"):
        create_eval_transform({**config, "is_training": True})


def test_config_roundtrip_and_errors() -> None:
    cfg = lsc_config()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="'depth'"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ConfigError, match="needs a vector system"):
        ModelConfig(backbone="test_resnet", n_classes=3)
    with pytest.raises(ConfigError, match="head must be"):
        ModelConfig(backbone="test_resnet", n_classes=3, head="svm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown timm model 'tset_vit'; did you mean test_vit"):
        create_model(ModelConfig(backbone="tset_vit", head="ce", n_classes=3))


def test_pretrained_weights_that_cannot_load_give_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import timm

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(
        ConfigError, match=r"could not load pretrained weights .*without --pretrained"
    ):
        create_model(lsc_config(), pretrained=True)


def test_backbones_with_a_pre_logits_layer_get_the_right_width() -> None:
    # MobileNetV3 pools to head_hidden_size (1024), not num_features (576)
    system = VectorSystem.create("v21", 50)
    model = create_model(
        ModelConfig(backbone="mobilenetv3_small_100", n_classes=50, system=system.to_dict())
    ).eval()
    assert model.feature_dim == 1024
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, system.dim)


def test_training_without_augmentation_sees_images_as_validation_does() -> None:
    from PIL import Image

    model = create_model(lsc_config(img_size=32))
    train = create_train_transform(model.data_config, augment=False)
    rng = np.random.default_rng(1)
    for width, height in ((32, 32), (40, 29)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(train(image), create_eval_transform(model.data_config)(image))
    augmented = create_train_transform(model.data_config, augment=True)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    assert not torch.equal(augmented(image), train(image))  # random crops
