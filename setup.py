"""ament_python package setup for scmpr_ros (works with colcon and with pip)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "scmpr_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={"scmpr_ros": ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/models", glob("models/*")),
    ],
    install_requires=["setuptools"],
    extras_require={
        # mamba-ssm builds only with nvcc and a CUDA build of torch.
        "cuda": ["mamba-ssm>=2.2"],
    },
    zip_safe=False,
    maintainer="scmpr_ros maintainers",
    maintainer_email="maintainers@users.noreply.b-seed-336bdb2c.example",
    description="SCM-PR: semantic-enhanced cross-modal (camera to LiDAR map) place recognition for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "scmpr = scmpr_ros.cli:main",
            "map_server = scmpr_ros.nodes.map_server:main",
            "localizer = scmpr_ros.nodes.localizer:main",
            "bag_player = scmpr_ros.nodes.bag_player:main",
        ],
    },
)
