"""Building blocks shared by every model: the fbank front end and the BEATs encoder."""
