"""Data sets (TFDS builders without TensorFlow), the Grain input pipeline and fixtures."""

from prompt4trust_jax.data.pipeline import (BUILDERS, FIXTURE_DIR, LABELS, MEDMCQA_FIXTURE_DIR,
                                            batches, configured_source, decode, letters,
                                            source)
