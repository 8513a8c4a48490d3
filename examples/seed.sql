-- Example data for schema.sql, the same on every run: 4 segments, 200
-- customers, 48 products (every sixth discontinued) with stock, and 1,000
-- orders from the last 45 days, every tenth shipped and paid, the rest
-- pending. Product 7 has only 3 in stock, so most of its pending orders
-- fail for want of stock. Replaces whatever the tables held.

TRUNCATE payments, orders, inventory, products, customers, segments RESTART IDENTITY;

INSERT INTO segments (id, segment_name)
VALUES (1, 'enterprise'), (2, 'small business'), (3, 'consumer'), (4, 'education');

INSERT INTO customers (id, name, email, segment_id)
SELECT i, 'Customer ' || i, 'customer' || i || '@example.com', 1 + i % 4
FROM generate_series(1, 200) AS i;

INSERT INTO products (id, name, category, status, price)
SELECT i,
       initcap(c.category) || ' item ' || i,
       c.category,
       CASE WHEN i % 6 = 0 THEN 'discontinued' ELSE 'active' END,
       5 + (i * 37) % 200 + 0.99
FROM generate_series(1, 48) AS i
CROSS JOIN LATERAL (SELECT (ARRAY['electronics', 'books', 'home', 'toys'])[1 + i % 4] AS category) AS c;

INSERT INTO inventory (product_id, quantity)
SELECT id, CASE WHEN id = 7 THEN 3 ELSE 1000 END FROM products;

INSERT INTO orders (id, customer_id, product_id, quantity, total_amount, status, order_date)
SELECT i,
       1 + (i * 7) % 200,
       p.id,
       q.quantity,
       q.quantity * p.price,
       CASE WHEN i % 10 = 0 THEN 'shipped' ELSE 'pending' END,
       CURRENT_DATE - i % 45
FROM generate_series(1, 1000) AS i
CROSS JOIN LATERAL (SELECT 1 + i % 5 AS quantity) AS q
JOIN products AS p ON p.id = 1 + (i * 11) % 48;

INSERT INTO payments (order_id, amount, status)
SELECT id, total_amount, 'settled' FROM orders WHERE status = 'shipped';

-- Rows inserted with explicit ids leave the identity sequences behind.
SELECT setval(pg_get_serial_sequence('customers', 'id'), 200),
       setval(pg_get_serial_sequence('products', 'id'), 48),
       setval(pg_get_serial_sequence('orders', 'id'), 1000);
