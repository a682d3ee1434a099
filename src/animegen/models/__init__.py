"""Model loading: hub ids, diffusers folders, A1111/Civitai single files; tiny test models; LoRA formats."""
