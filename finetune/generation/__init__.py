"""`python -m finetune.generate`: txt2img, img2img, inpaint / outpaint, mix, walk and variations with
any number of learned embeddings (the job in `job`, its typed config in `config`)."""
