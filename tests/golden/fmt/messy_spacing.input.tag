let   活跃天数=days_since( last_active_at )
tag"沉睡唤醒"when 活跃天数>=90 tag "新客"	when count(orders)==0
　tag "老客" when count( orders )between 1   and 2



audience"广州新人福利"=city=="广州"and not tag("新客")
let x=[ "a" ,"b", ]
let y = - 5+ +3*(2 -1)
