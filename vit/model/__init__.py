"""The model and its parts: patch embeddings, positional schemes, attention, blocks, and
the VisionTransformer that puts them together (plus loading timm's weights into it)."""
