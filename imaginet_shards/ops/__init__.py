"""Operations on whole shard sets: `pack` (annotated images to shards), `perturb` (a perturbed copy),
`verify` (checksums, structure, decoding) and `stats` (label, format and size statistics and the
confounds a detector could learn).
"""
