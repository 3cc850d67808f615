"""The two demo models Berth is shown and tested on: ``credit-risk`` (tabular, with a planted
historical bias for the fairness work to find) and ``sentiment`` (MiniLM encoder plus a head)."""
