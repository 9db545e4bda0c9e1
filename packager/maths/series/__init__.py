"""The mathematics of the series: activation jets, bases and coefficient fits. Pure torch, no I/O."""
