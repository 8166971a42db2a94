"""Experiments that run the whole pipeline and report whether a study's formulas pay off at tiny scale:
`tinylm ladder` (PanGu-π Pro's ablation). They use training, surgery, the tokenizer tools and evaluation
only through their public functions and the run directories those write."""
