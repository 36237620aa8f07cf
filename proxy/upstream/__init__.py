"""The cluster side of tulle-proxy: hosts, host sets, load balancers, circuit
breakers, outlier detection and active health checking. Each is a sans-IO core
(time and randomness are arguments); only health/prober.py does I/O."""
