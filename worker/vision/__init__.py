"""Image and video inputs for vision models (mlx-vlm), batched with text.

See docs/vision.md. Importing this package imports no MLX.
"""
