"""fairseq-hgrn2: HGRN2 language models as a fairseq --user-dir plugin."""
from setuptools import find_packages, setup

setup(
    name="fairseq-hgrn2",
    version="0.1.0",
    description="HGRN2 (Gated Linear RNNs with State Expansion) language models for fairseq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_hgrn2", "fairseq_hgrn2.*"]),
    python_requires=">=3.11,<3.13",
    install_requires=[
        # fairseq 0.12.2 does not import on Python 3.11; ve-fairseq is a prebuilt wheel of upstream fairseq
        # (import name `fairseq`). Never depend on the distribution `fairseq`: it would overwrite the package.
        "ve-fairseq==0.12.3",
        "hydra-core==1.3.2",
        "omegaconf==2.3.0",
        "torch>=2.4",
        # fairseq requires torchaudio (never imported on the LM path); pinning it stops pip replacing torch
        "torchaudio==2.11.1",
        # triton 3.6 breaks on range(tl.cdiv(...)) under numpy >= 2.4 when interpreting on CPU
        "numpy>=1.24,<2.4",
        # the version GPU builds of torch 2.11 ship with; its CPU interpreter is also the fastest measured
        "triton==3.6.0; platform_system == 'Linux'",
        "sacremoses==0.2.0",
        "tensorboard>=2.16",
        "matplotlib>=3.8",
    ],
    extras_require={"test": ["pytest>=8"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
