"""Building blocks shared by every model: the fbank front end, the BEATs encoder and the backbone
with official parameter names. The bottom layer: nothing here imports another part of the package."""
