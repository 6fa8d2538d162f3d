//! Helpers shared by xenring's whole-system tests (see `tests/`).
