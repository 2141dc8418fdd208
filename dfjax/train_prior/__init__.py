"""Training small Stable Diffusion pipelines (tokenizer, text encoder, VAE, U-Net) on banks."""
