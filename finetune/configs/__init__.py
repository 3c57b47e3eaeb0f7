"""The Hydra configs of finetune-train / finetune-evaluate, shipped in the package (a module, so that
Hydra finds them as pkg://finetune.configs wherever the package is installed)."""
