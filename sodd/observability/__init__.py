"""What the daemon tells its operators: Prometheus series and their endpoint, logging set-up and the
request log, and keeping Paddle's start-up noise out of the output.

May import: sodd.errors, sodd.config. Other packages report to it; it reads nothing from them.
"""
