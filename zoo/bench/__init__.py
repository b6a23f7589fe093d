"""The scaling benchmark: how the cost of each mechanism grows, measured, fitted and plotted. Its modules::

    seq2seq.py    GRU encoder-decoder without attention, O(m + t), and with attention, O(m·t)
    layers.py     self-attention O(n²·d), recurrent O(n·d²), convolution O(k·n·d²)
                  (Vaswani et al. 2017, Table 1)
    measure.py    median wall time after warm-up, XLA's memory and FLOP accounts, the run's setting
    fit.py        log-log least-squares exponents with their fit range
    peer_torch.py the same layers in PyTorch (imported only for --peer torch)
    report.py     targets, printed tables, scaling.json
    runner.py     presets and one run of the studies;  cli.py: python benchmark.py

The plots are drawn by :func:`zoo.plotting.write_scaling_plots` (all matplotlib use is there).
"""
