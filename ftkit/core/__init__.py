"""The vocabulary every other package speaks: job statuses and stop reasons, the typed records
that travel between the job store, the client, the panels and the HTTP server, the rules a
client and the server both check, the one retry helper for outages, and the one HTML table.

It imports nothing of ftkit but ``errors``, and nothing heavy at all.
"""
