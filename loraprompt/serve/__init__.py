"""HTTP APIs over one loaded model: Automatic1111's `/sdapi/v1/*` subset and Replicate-style
`/predictions`, on FastAPI (`loraprompt serve`, and mounted inside `loraprompt webui`).

Every image is one `Txt2Img.generate` call with its own seed, queued on the model's single worker
(`jobs.ModelQueue`), so a batch whose prompts ask for different LoRA sets gives each image its own
set and each image equals generating it alone. The Ray Serve deployment is in `ray_app`, imported
only by `loraprompt serve --ray`.
"""
