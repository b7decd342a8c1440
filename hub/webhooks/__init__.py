"""Webhooks: a job's events pushed to a URL, signed as the Standard Webhooks specification says.

- ``signing``: the ``whsec_`` secrets and the ``webhook-*`` headers.
- ``targets``: which URLs a job may name, and the addresses a delivery may reach (SSRF).
- ``policy``: what a submission is checked for, and the secret each tenant signs with.
- ``record``: the webhook's fields in the job record, and the view of them clients get.
- ``sender``: the delivery loop every hub runs: claim what is due, send it, record it, retry.

The job scripts (``contract/lua/append.lua``) queue a delivery in the same step as the event,
so a delivery survives any hub's restart; any hub sends it, one at a time by lease.
"""
