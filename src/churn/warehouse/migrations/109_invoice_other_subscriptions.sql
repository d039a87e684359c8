-- Per invoice, the subscriptions its lines name other than its own (almost always none):
-- an incremental history rebuild reads the lines of its few dirty subscriptions' invoices
-- and of these, instead of unnesting every invoice's lines to find them. Filled here for
-- the invoices already stored, with the expression core uses
-- (churn.pipelines.stripe.streams, core_invoices.other_subscriptions); NULL (a row this
-- could not fill) reads as "unknown" and is always read.
ALTER TABLE core_invoices ADD COLUMN other_subscriptions VARCHAR[];
UPDATE core_invoices SET other_subscriptions = o.other_subscriptions
FROM (
    SELECT id,
           coalesce(list_distinct(list_filter(list_transform(
               CAST(payload->'$.lines.data' AS JSON[]),
               lambda l: coalesce(l->>'$.parent.subscription_item_details.subscription',
                                  stripe_id(l->'$.subscription'))),
               lambda s: s IS NOT NULL AND s IS DISTINCT FROM coalesce(
                   stripe_id(payload->'$.subscription'),
                   payload->>'$.parent.subscription_details.subscription'))), [])
               AS other_subscriptions
    FROM raw_stripe_invoice
) o
WHERE o.id = core_invoices.invoice_id;
