"""The fault suite: each test module names the fault it injects, injects it for real, and checks what users see."""
