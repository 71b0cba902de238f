"""What the daemon tells its operators: Prometheus series (metrics) and their endpoint (endpoint),
what the detection core reports of each request (reports), each request's end in its series and
the request log (requests), logging set-up (logs), and keeping Paddle's start-up noise out of the
output (quiet).

May import: sodd.errors, sodd.config. Other packages report to it; it reads nothing from them.
"""
