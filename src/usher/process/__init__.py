"""The processes of `usher run`: what the control process of several workers holds for them."""
