from services.billing.store import BillingAdapter
from shared.worker.main import run_worker

run_worker("billing", BillingAdapter.from_env)
