"""CRM: contacts, interaction records (calls, e-mails, tickets), purchases and licences,
forum memberships."""
