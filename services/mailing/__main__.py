from services.mailing.store import MailingAdapter
from shared.worker.main import run_worker

run_worker("mailing", MailingAdapter.from_env)
