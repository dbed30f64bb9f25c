"""Speed baseline: ResNet-18 (He et al., BasicBlock x [2, 2, 2, 2], widths 64-512, stride 32) + NetVLAD
(K clusters on the 512-d conv5 features, projection to d_D), written here because torchvision cannot
be installed beside the CPU torch.  Used by ``scmpr benchmark encoder`` as the yardstick.
"""

from __future__ import annotations

from torch import Tensor, nn

from scmpr_ros.model.lidar_encoder import BasicBlock
from scmpr_ros.model.netvlad import NetVLAD
from scmpr_ros.model.saff import ConvBNAct


class ResNet18(nn.Module):
    def __init__(self, in_chans: int = 3, widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(in_chans, widths[0], 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1))
        layers = []
        prev = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(prev, w, stride), BasicBlock(w, w, 1)))
            prev = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


class ResNet18NetVLAD(nn.Module):
    """images (B, 3, H, W) -> (B, D) unit-norm descriptors."""

    def __init__(self, clusters: int = 16, descriptor_dim: int = 256):
        super().__init__()
        self.backbone = ResNet18()
        self.netvlad = NetVLAD(self.backbone.out_channels, clusters, descriptor_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.netvlad(self.backbone(images))
