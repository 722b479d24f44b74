"""Converting trained MHA/GQA checkpoints to MLA, and the experiment that measures what conversion keeps."""
