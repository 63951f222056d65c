"""The papers' experiments, one module each; the machinery that runs them is :mod:`latentgrad.lab`.

Each public module here is one experiment and exposes ``EXPERIMENT``, a
:class:`latentgrad.lab.Experiment`: a name, a typed config (the paper's settings as defaults)
and ``build(config, chosen)``, which gets the estimator already built from ``config.estimator``
(``chosen.estimator``, with the latent family it asks for in ``chosen.latent``) and returns a
:class:`latentgrad.lab.Trainable`. :func:`latentgrad.lab.all_experiments` finds the modules
by themselves (``latentgrad list`` shows them): adding an experiment is adding a module here,
and it touches no other file.
"""
