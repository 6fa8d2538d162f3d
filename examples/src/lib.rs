//! Examples of split drivers and services built on xenring; see `examples/`.
