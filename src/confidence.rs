//! Reading one confidence in [0, 1] from a model response (presets, `auto`, JMESPath).
