"""Window decoding: the pixels of a crop, decoding as little of the image as each format allows
(`png`: inflation stops at the crop's last row; `webp`: libwebp's cropping; `windows`: the dispatch
and a batch decoder for DALI). Pixels equal those of a full decode.
"""
