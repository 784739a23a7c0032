"""The Triton backend's pieces: `layout` (where gate and value live, plain PyTorch),
`math` and `kernels` (Triton; imported only when a Triton call is made)."""
