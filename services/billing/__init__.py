"""Billing: accounts, invoices, payments, call detail records and Radius broadband sessions."""
