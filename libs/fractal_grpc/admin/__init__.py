"""The reference's admin rules (reference §3.0, §3.3): job filters, the one status change a
superuser may make, the task query's result limit, and the masked settings view."""
